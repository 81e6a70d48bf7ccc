"""Where a model looks and how far to trust it: saliency maps, overlays, lungs, faithfulness,
sanity checks and the "is this CT?" screen.
"""
