"""Offline training of the ShiftRec sequential model: data, model, evaluation, export."""
