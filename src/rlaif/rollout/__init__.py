"""Batched generation and scoring of rollouts."""
