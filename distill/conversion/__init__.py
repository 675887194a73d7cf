"""Conversion and distillation: attention -> mixer weight transfer, layer selection, align, logit KD,
the losses, the schedule that runs them, the teacher-sampled corpus, held-out KL."""
