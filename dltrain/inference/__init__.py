"""Putting a trained model to use: loading it (loading.py: a run directory, a checkpoint or an exported ONNX file
as one Predictor), shaping its outputs into answers (answers.py), predicting on new inputs (predict.py: `dltrain
predict`) and evaluating it on a split (evaluate.py, eval_plots.py: `dltrain eval`). It builds on training/ (the
model, checkpoints) and data/; neither imports it.
"""
