"""Offline catalog encoding: plan a resumable job, embed clips (local or Ray engine), write the bundle."""
