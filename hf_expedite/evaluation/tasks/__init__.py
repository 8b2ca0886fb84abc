"""The evaluation tasks behind the scripts (depth, semantic and panoptic segmentation): how each reads its references,
post-processes the model outputs and computes its metric. A script imports its task only after parsing its options."""
