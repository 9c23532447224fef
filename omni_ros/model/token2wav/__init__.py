"""Step-Audio2 token2wav (MiniCPM-o 4.5 waveform stage)."""
