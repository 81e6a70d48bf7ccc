"""What models ship with the app, read from their cards alone (no TensorFlow import)."""

from __future__ import annotations

from pathlib import Path

from ctdemo.config import WEIGHTS_DIR
from ctdemo.evaluation.numbers import shown
from ctdemo.models.cards import ModelCard, shipped_cards


def shipped_model_summaries(weights_dir: Path = WEIGHTS_DIR) -> list[dict]:
    """One row per shipped model: what it is and how well it did on its validation split."""
    rows = []
    for name, card in shipped_cards(weights_dir).items():
        accuracy = card.validation.get("accuracy", {})
        split = f"{card.split_method} ({card.group_source})"
        rows.append(
            {
                "model": name,
                "architecture": card.kind,
                "input": f"{card.image_size}×{card.image_size} grey",
                "parameters": card.parameters,
                "validation accuracy": _interval_text(accuracy),
                "ROC AUC": _interval_text(card.validation.get("roc_auc", {})),
                "validation split": split,
                "validation slices": card.validation_slices,
            }
        )
    return rows


def _interval_text(interval: dict) -> str:
    if not interval or interval.get("value") is None:
        return "–"
    low, high = shown(interval.get("low")), shown(interval.get("high"))
    return f"{shown(interval['value'])} (95% CI {low}–{high})"


def card_sections(card: ModelCard) -> dict[str, list[dict[str, str]]]:
    """A card as small two-column tables a person reads: what it is, how it was trained,
    on what data and split, and how it did on validation."""
    architecture = card.architecture
    training = card.training
    data = card.data
    validation = card.validation
    layers = ", ".join(str(units) for units in architecture.get("filters") or []) or "–"
    kind = architecture.get("kind", "?").upper()
    members = int(architecture.get("members", 1))
    sections = {
        "Model": {
            "architecture": f"{members} {kind}s, logits averaged" if members > 1 else kind,
            "input": f"{card.image_size}×{card.image_size}, {card.channels} channel(s)",
            "convolution filters per block": layers,
            "dense units": ", ".join(str(u) for u in architecture.get("hidden_units") or []),
            "dropout": str(architecture.get("dropout", "–")),
            "parameters": f"{card.parameters:,}",
            "classes": ", ".join(card.class_names),
            "output": card.output,
        },
        "Training": {
            "epochs (best)": f"{len(card.history.get('loss', []))} ({card.best_epoch})",
            "stopped because": card.stop_reason or "–",
            "learning rate": str(training.get("learning_rate", "–")),
            "batch size": str(training.get("batch_size", "–")),
            "augmentation": "on" if training.get("augment") else "off",
            "seed": str(card.seed),
            "training time": f"{card.training_seconds:.0f} s",
            "rebuilt by": f"`{card.command}`" if card.command else "–",
        },
        "Data and split": {
            "slices per class": ", ".join(
                f"{k}: {v}" for k, v in data.get("class_counts", {}).items()
            ),
            "train / validation slices": (
                f"{data.get('train_slices', '–')} / {data.get('validation_slices', '–')}"
            ),
            "split": f"{card.split_method} ({card.group_source})",
            "validation is": validation.get("split", "–"),
        },
        "Validation (95% intervals)": {
            name: _interval_text(validation.get(key, {}))
            for key, name in (
                ("accuracy", "accuracy"),
                ("sensitivity", f"sensitivity ({card.positive_class})"),
                ("specificity", "specificity"),
                ("precision", "precision"),
                ("f1", "F1"),
                ("roc_auc", "ROC AUC"),
            )
        },
    }
    return {
        title: [{"": key, "value": value} for key, value in rows.items()]
        for title, rows in sections.items()
    }
