"""Reward-hacking attacks for tests/test_reward_hacking.py: forgery sources, small tasks, the attack table."""
