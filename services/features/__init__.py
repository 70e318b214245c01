"""FeatureService: each user's fresh behaviour history and the catalogue, from the event store."""
