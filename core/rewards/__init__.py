"""Reward signals for RLHF, all placed on the policy's response tokens.

What is here (each a leaf module, imported on demand so ``import core.rewards`` stays cheap):

- ``segments``  - sentences and sub-sentences of a response as exact character spans
  (Wu et al. 2023, "Fine-Grained Human Feedback Gives Better Rewards for Language
  Model Training"; rule taken from allenai/FineGrainedRLHF);
- ``align``     - character spans -> policy token indices, robust to byte-level BPE
  splitting multi-byte characters and to a reward model with another tokenizer;
- ``tensor``    - THE representation trainers and the app consume: ``TokenRewards``
  (named (B, T) reward components + the segments that produced them), the
  ``RewardComponent`` protocol, builders and ``compute_token_rewards``;
- ``toxicity``  - toxicity scorers (alt-profanity-check; MiniLM embeddings + a
  logistic head trained on Davidson et al. 2017) and the holistic / sentence-level
  detox rewards of Wu et al. 2023, sec. 3;
- ``fluency``   - perplexity under a frozen reference LM and distinct-n.

- ``heads``     - the reward models that ship with the project (``core/reward_heads/``):
  linear heads on frozen MiniLM and lexical grounding features, with no training step;
- ``embedcache`` - MiniLM sentence embeddings cached on disk for rebuilding them.

What it leaves out: the learned reward models (Bradley-Terry, fine-grained RMs,
redistribution) live in their own modules and implement ``tensor.RewardComponent``.

    from core.rewards.tensor import compute_token_rewards, FunctionReward
    tr = compute_token_rewards(prompts, response_ids, tokenizer,
                               {"len": FunctionReward(lambda p, r: len(r) / 100)})
    rewards = tr.combined({"len": 1.0})          # (B, T)
"""
