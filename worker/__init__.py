"""The worker daemon and everything a job runs on: communicator, collectives, ops."""
