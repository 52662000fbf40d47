"""Sales and calendars: the sales store and its objects, Rossmann-layout files, synthetic sales, calendars."""
