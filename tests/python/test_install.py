"""scripts/install-python.sh: its options, and an install into a temporary prefix of the package the tests
run against (KILN_BINARY_DIR, with --no-build: a test must not rebuild the tree it runs from)."""
import os
import subprocess
import sys
import unittest

import support

SCRIPT = os.path.join(support.SOURCE_DIR, "scripts", "install-python.sh")


class InstallScriptTest(support.TempDirTestCase):
    def run_script(self, *args):
        env = dict(os.environ, KILN_PYTHON=sys.executable)
        return subprocess.run([SCRIPT, *args], capture_output=True, text=True, env=env, cwd=self.tmp)

    def test_options(self):
        p = self.run_script("--help")
        self.assertEqual(p.returncode, 0)
        self.assertIn("usage: scripts/install-python.sh [--prefix DIR] [--build-dir DIR] [--no-build]", p.stdout)
        p = self.run_script("--frobnicate")
        self.assertEqual(p.returncode, 2)
        self.assertIn("unknown option '--frobnicate'", p.stderr)
        p = self.run_script("--prefix")
        self.assertEqual(p.returncode, 2)

    def test_install_into_a_prefix(self):
        build_dir = os.environ.get("KILN_BINARY_DIR")
        if not build_dir:
            self.skipTest("KILN_BINARY_DIR is not set (ctest sets it to the build tree)")
        prefix = self.path("site")
        p = self.run_script("--prefix", prefix, "--build-dir", build_dir, "--no-build")
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn(f"installed kiln {self.version()} in {prefix}/kiln", p.stdout)
        names = sorted(os.listdir(os.path.join(prefix, "kiln")))
        self.assertIn("__init__.py", names)
        self.assertTrue(any(n.startswith("_kiln") and n.endswith(".so") for n in names), names)
        # The installed copy imports and runs without the build tree on the path.
        code = ("import kiln, numpy as np; "
                "e = kiln.compile(open(%r, 'rb').read(), shapes={'image': (1, 1, 28, 28)}); "
                "print(kiln.__file__); print(e(np.zeros((1, 1, 28, 28), np.float32))['probabilities'].shape)"
                % os.path.join(support.SOURCE_DIR, "examples", "tiny_cnn.onnx"))
        env = dict(os.environ, PYTHONPATH=prefix)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/")
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertEqual(run.stdout.splitlines(), [os.path.join(prefix, "kiln", "__init__.py"), "(1, 10)"])

    @staticmethod
    def version():
        import kiln

        return kiln.__version__


if __name__ == "__main__":
    unittest.main()
