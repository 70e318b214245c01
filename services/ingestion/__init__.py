"""IngestionService: validates behaviour events and catalogue items and stores them once."""
