"""The paper's test protocols (PAPER.md section 5), each counting every example exactly once.

evaluator   `Evaluator`: one protocol at one or more scales, softmax averaged over scales;
            what training evaluates with (centre crop) and `python -m rectifiers_jax.evaluate`
views       centre crop and 10-view (four corners and centre, and their flips)
dense       whole images on fixed canvases, every window of the last conv map
"""
