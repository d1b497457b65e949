"""Segmenting with a bank: the segmenter, label transfer, evaluation and its metrics, prediction
over image files, and the plots."""
