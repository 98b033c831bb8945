"""The turn pipeline: reply text -> sentences -> speech -> frames -> segments, as typed events."""
