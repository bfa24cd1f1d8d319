"""Live top-K: events streamed in, the most frequent keys of the last minutes, hour or day (issue 27)."""
