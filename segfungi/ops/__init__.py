"""The math of FUNGI's segmentation loss that no model holds: the loss and its head, the negatives,
patch sampling and the sign lookup of the structured projection."""
