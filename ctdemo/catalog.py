"""What models ship with the app, read from their cards alone (no TensorFlow import)."""

from __future__ import annotations

from pathlib import Path

from ctdemo.cards import CARD_SUFFIX, ModelCard
from ctdemo.paths import WEIGHTS_DIR


def shipped_cards(weights_dir: Path = WEIGHTS_DIR) -> dict[str, ModelCard]:
    """Cards of the .keras files in `weights_dir`, by model name."""
    cards = {}
    for model_path in sorted(weights_dir.glob("*.keras")):
        card_file = model_path.with_name(model_path.stem + CARD_SUFFIX)
        if card_file.is_file():
            cards[model_path.stem] = ModelCard.from_json(card_file.read_text())
    return cards


def shipped_model_summaries(weights_dir: Path = WEIGHTS_DIR) -> list[dict]:
    """One row per shipped model: what it is and how well it did on its validation split."""
    rows = []
    for name, card in shipped_cards(weights_dir).items():
        accuracy = card.validation.get("accuracy", {})
        split = f"{card.split.get('method')} ({card.split.get('group_source')})"
        rows.append(
            {
                "model": name,
                "architecture": card.architecture.get("kind", "?").upper(),
                "input": f"{card.image_size}×{card.image_size} grey",
                "parameters": card.parameters,
                "validation accuracy": _interval_text(accuracy),
                "ROC AUC": _interval_text(card.validation.get("roc_auc", {})),
                "validation split": split,
                "validation slices": card.validation.get("n"),
            }
        )
    return rows


def _interval_text(interval: dict) -> str:
    if not interval:
        return "–"
    return f"{interval['value']:.1%} (95% CI {interval['low']:.1%}–{interval['high']:.1%})"
