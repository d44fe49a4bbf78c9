"""Selective-scan kernels behind :func:`cmddcli.model.ssm.selective_scan` (each imported lazily by ssm.py):

* ``scan_cpu``    -- compiled C++ kernels (``csrc/``, built on first use with g++), inference and training;
* ``scan_triton`` -- our Triton GPU kernel, the four SS2D directions fused;
* ``scan_mamba``  -- mamba-ssm's CUDA ``selective_scan_fn`` when installed.

The references they are tested against (``selective_scan_ref``, the chunked PyTorch scan) live in ssm.py.
"""
