"""Data: manifests (manifest.py), DPDD / RealDOF / pairs discovery (discovery.py), preparing crops
(prepare.py, crops.py), sharp sources (sources.py), the defocus synthesiser (synth.py with psf.py,
depth.py and render.py) and the datasets (datasets.py). Import from the submodules; importing this
package loads nothing.
"""
