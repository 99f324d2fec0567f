"""What a notebook shows: the event form, the live chart and the tables."""
