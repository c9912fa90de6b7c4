import pytest

from nnunet_semicl import cli
from nnunet_semicl.errors import ConversionError, EvaluationError, InputError, SplitError


def test_every_input_error_is_an_input_error_and_a_value_error():
    for cls in (SplitError, ConversionError, EvaluationError):
        assert issubclass(cls, InputError) and issubclass(cls, ValueError)
    assert not issubclass(SplitError, ConversionError) and not issubclass(ConversionError, SplitError)


@pytest.mark.parametrize("argv", [["split", "27", "--labeled", "1"], ["tiny-config", "27"], ["sync-plans", "27"]])
def test_cli_reports_input_errors_with_exit_status_2(argv, monkeypatch, capsys):
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nnunet_semicl {argv[0]}: error: Environment variable(s) ['nnUNet_preprocessed'] not set")
