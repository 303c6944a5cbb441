"""What SimCLR pretraining (hnm.pretrain) and SupCon fine-tuning (hnm.finetune) share: the
augmentations, the two views of a batch, the loader that reads batches ahead, and the learning-rate
schedules. Neither stage imports the other; both import this."""
