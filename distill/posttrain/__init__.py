"""Post-training through TRL: SFT, GRPO, DPO, the verifiable rewards, and the stage code they share."""
