"""Edge and cloud stages, codecs and payload formats."""
