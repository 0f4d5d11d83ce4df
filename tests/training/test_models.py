"""Hyperparameter parsing and model construction."""

from __future__ import annotations

import pytest

from training.errors import ConfigurationError, HyperparameterError
from training.models import MODELS, build_model, constructor_kwargs, resolve_hyperparameters
from training.training_script import parse_hyperparameters


def test_defaults_are_the_samples_mnist_network_without_scaler() -> None:
    from torch import nn

    resolved = resolve_hyperparameters({})
    assert resolved.spec.class_name == "NeuralNetClassifier"
    assert resolved.as_dict() == {
        "model": "NeuralNetClassifier", "label_column": "label", "test_size": 0.2,
        "random_state": 0, "scaler": "none", "n_layers": 2, "n_w_bits": 4, "n_a_bits": 4,
        "n_accum_bits": 32, "n_hidden_neurons_multiplier": 0.5, "activation": "relu",
        "max_epochs": 7, "lr": 0.01, "batch_size": 128,
        # the sample's circuit: no accumulator rounding, concrete-ml's default p_error (exact)
        "rounding_bits": None, "rounding_method": "exact", "p_error": None}
    kwargs = constructor_kwargs(resolved)
    assert kwargs["module__activation_function"] is nn.ReLU
    assert not {"rounding_bits", "rounding_method", "p_error"} & set(kwargs)  # compile time only


def test_other_families_are_one_hyperparameter_away_and_keep_minmax_scaling() -> None:
    resolved = resolve_hyperparameters({"model": "LogisticRegression"})
    assert resolved.as_dict() == {"model": "LogisticRegression", "label_column": "label",
                                  "test_size": 0.2, "random_state": 0, "scaler": "minmax",
                                  "n_bits": 8, "C": 1.0, "max_iter": 100}
    assert resolve_hyperparameters({"scaler": "MinMax"}).job["scaler"] == "minmax"
    assert resolve_hyperparameters({"model": "XGBClassifier", "scaler": "none"}
                                   ).job["scaler"] == "none"
    with pytest.raises(HyperparameterError, match="'scaler' must be one of none, minmax"):
        resolve_hyperparameters({"scaler": "zscore"})


def test_neural_net_defaults_are_the_reference_config() -> None:
    from torch import nn

    kwargs = constructor_kwargs(resolve_hyperparameters({"model": "NeuralNetClassifier"}))
    assert kwargs["module__n_layers"] == 2
    assert kwargs["module__n_w_bits"] == kwargs["module__n_a_bits"] == 4
    assert kwargs["module__n_hidden_neurons_multiplier"] == 0.5
    assert kwargs["module__activation_function"] is nn.ReLU
    assert kwargs["max_epochs"] == 7


def test_sagemaker_json_encoded_values_and_own_keys_are_handled() -> None:
    resolved = resolve_hyperparameters({
        "model": '"DecisionTreeClassifier"', "max_depth": '"2"', "n_bits": "3",
        "sagemaker_program": '"training_script.py"', "sagemaker_region": '"us-east-1"',
    })
    assert resolved.model == {"n_bits": 3, "max_depth": 2, "p_error": None}


def test_every_listed_model_builds() -> None:
    for name in MODELS:
        model = build_model(resolve_hyperparameters({"model": name}))
        assert type(model).__name__ == name


def test_required_model_families_are_available() -> None:
    required = {"LogisticRegression", "DecisionTreeClassifier", "XGBClassifier",
                "RandomForestClassifier", "NeuralNetClassifier"}
    assert required <= set(MODELS)
    assert any(spec.task == "regression" for spec in MODELS.values())


def test_model_name_is_case_insensitive() -> None:
    assert resolve_hyperparameters({"model": "xgbclassifier"}).spec.class_name == "XGBClassifier"


def test_all_problems_are_listed_at_once() -> None:
    with pytest.raises(HyperparameterError) as info:
        resolve_hyperparameters({"model": "XGBClassifier", "n_bits": "1", "max_depth": "x",
                                 "C": "2", "test_size": "0.99"})
    message = str(info.value)
    assert "'n_bits' must be >= 2" in message
    assert "'max_depth' invalid literal" in message
    assert "'C' is not a hyperparameter of XGBClassifier" in message
    assert "'test_size' must be <= 0.9" in message


@pytest.mark.parametrize(("value", "match"), [
    ("2.5", "invalid literal for int"), ("nan", "invalid literal for int"),
])
def test_integer_parameters_reject_non_integers(value: str, match: str) -> None:
    with pytest.raises(HyperparameterError, match=match):
        resolve_hyperparameters({"model": "LogisticRegression", "n_bits": value})


def test_float_parameters_reject_non_finite() -> None:
    with pytest.raises(HyperparameterError, match="'C' must be a finite number"):
        resolve_hyperparameters({"model": "LogisticRegression", "C": "inf"})


def test_activation_choices() -> None:
    with pytest.raises(HyperparameterError, match="'activation' must be one of relu, sigmoid"):
        resolve_hyperparameters({"model": "NeuralNetClassifier", "activation": "swish"})


def test_command_line_pairs() -> None:
    assert parse_hyperparameters(["--model", "Ridge", "--alpha=0.5", "--label-column", "y",
                                  "--random_state", "-1"]) == {
        "model": "Ridge", "alpha": "0.5", "label_column": "y", "random_state": "-1"}


def test_one_letter_names_come_with_one_dash_from_the_sagemaker_toolkit() -> None:
    """sagemaker-training runs ``training_script.py -C 1.0 --model LinearSVC``."""
    assert parse_hyperparameters(["-C", "0.5", "--model", "LinearSVC", "-C=2"]) == {
        "C": "2", "model": "LinearSVC"}
    with pytest.raises(ConfigurationError,
                       match=r"stray argument '-1'; hyperparameter -C has no value"):
        parse_hyperparameters(["-1", "-C", "--model", "x"])
