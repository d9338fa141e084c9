"""examples/python/build_engine.py runs on examples/tiny_cnn.onnx, and README.md's "## Python" code block
is that file."""
import os
import re
import subprocess
import sys
import unittest

import numpy as np

import kiln
import support

EXAMPLE = os.path.join(support.SOURCE_DIR, "examples", "python", "build_engine.py")
TINY_CNN = os.path.join(support.SOURCE_DIR, "examples", "tiny_cnn.onnx")


class ExampleTest(support.TempDirTestCase):
    def test_build_engine_example_runs_on_tiny_cnn(self):
        engine_path = self.path("tiny_cnn.engine")
        p = subprocess.run([sys.executable, EXAMPLE, TINY_CNN, engine_path], capture_output=True, text=True,
                           cwd=support.SOURCE_DIR, env=dict(os.environ))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stderr, "")
        lines = p.stdout.splitlines()
        self.assertEqual(lines[0], "probabilities (4, 10)")
        printed = np.array([float(v) for v in re.findall(r"[-+]?\d+\.\d*(?:e[-+]?\d+)?", "\n".join(lines[1:]))])
        self.assertEqual(printed.size, 40)
        probabilities = printed.reshape(4, 10)
        # Softmax rows (printed with 4 decimals).
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
        self.assertTrue(((probabilities >= 0) & (probabilities <= 1)).all())

        # The engine file it wrote gives the same numbers for the same input.
        engine = kiln.load(engine_path)
        x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
        np.testing.assert_allclose(engine({"image": x})["probabilities"], probabilities, atol=6e-5)

    def test_readme_python_block_is_the_example(self):
        with open(os.path.join(support.SOURCE_DIR, "README.md")) as f:
            readme = f.read()
        section = re.search(r"^## Python\s*$(.*?)(?=^## |\Z)", readme, re.M | re.S)
        block = section and re.search(r"^```python\n(.*?)^```", section.group(1), re.M | re.S)
        if not block:
            self.skipTest("README.md has no ```python block under '## Python' yet (it will hold "
                          "examples/python/build_engine.py)")
        with open(EXAMPLE) as f:
            example = f.read()
        self.assertEqual(block.group(1).rstrip(), example.rstrip(),
                         "README.md's '## Python' code block differs from examples/python/build_engine.py")


if __name__ == "__main__":
    unittest.main()
