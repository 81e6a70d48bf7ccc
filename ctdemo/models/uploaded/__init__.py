"""Bring your own model: a visitor's Keras classifier, checked before Keras sees it, then made
to work like ours.

The steps, in the order `load.read_uploaded_model` takes them:

- `files`: the upload's bytes, a `.keras` zip or an `.h5` file, opened in memory with bounded
  sizes; its architecture JSON read out without building anything;
- `safety`: that architecture refused if anything in it could run code when loaded (only Keras
  built-in layers and objects pass);
- `cost`: shapes propagated through the architecture (`layer_rules` per layer, `shapes` for the
  arithmetic) and the model refused when it is too big to build or run here (`limits`);
- `load`: only then loaded, in Keras safe mode, from a private temporary copy;
- `describe`: what the loaded model is (input, head, size), shown to the visitor;
- `adapt`: one of ours made of it, a flat functional model (`graph`) giving one logit per
  class, with its `ModelCard`.
"""
