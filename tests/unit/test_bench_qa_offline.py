"""bench.qa_offline's training flags: refused before anything is trained when not above zero."""

import pytest

from bench import qa_offline


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs: must be above 0, not 0"),
    (["--epochs", "two"], "--epochs: not a number: 'two'"),
    (["--learning-rate=-1e-3"], "--learning-rate: must be above 0, not -1e-3"),
    (["--learning-rate", "nan"], "--learning-rate: must be above 0, not nan"),
])
def test_training_flags_that_are_not_above_zero_exit_with_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        qa_offline.main(["eval", "--train-cpu", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_positive_numbers_pass_as_their_type():
    assert qa_offline.positive(int)("3") == 3
    assert qa_offline.positive(float)("2e-3") == pytest.approx(2e-3)
