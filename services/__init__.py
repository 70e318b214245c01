"""ShiftRec's gRPC services: ingestion, features and inference."""
