"""Benchmarks: speed, determinism, robustness and format measurements behind the figures in docs/.

Each runs from the repository root as ``python -m bench.NAME`` (``--help`` lists its options):
codec_speed, determinism, format_rate, fuzz_decoder, jpeg_anchor, large_image, train_throughput.
"""
