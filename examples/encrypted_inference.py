"""Encrypted inference from Python, notebook style (run top to bottom, or cell by cell).

    python examples/encrypted_inference.py

Brings up the local stack (embedded S3, ``start_training.py --local``,
``deploy_endpoint.py --local``) with :func:`local_mode.stack.local_stack`, then uses the public API
exactly as against AWS. On AWS, replace the stack with your endpoint name, model.tar.gz URI,
an S3 prefix and ``boto3.Session()``.
"""

# %% Data: a clinic's records. Training rows go to S3; held-out patients never leave here.
import contextlib

import numpy as np

from client import EncryptedPredictor, InvalidInputError
from local_mode.demo import load_case
from local_mode.stack import local_stack

x_train, x_patients, y_train, y_patients, feature_names = load_case("breast-cancer")
patients = x_patients[:10]

with contextlib.ExitStack() as cleanup:
    # %% Bring up the local stack: train a depth-2 decision tree (a model that needs
    # evaluation keys) and deploy it behind a local InvokeEndpointAsync runtime.
    stack = cleanup.enter_context(
        local_stack(
            x_train,
            y_train,
            feature_names=feature_names,
            hyperparameters={"model": "DecisionTreeClassifier", "max_depth": 2, "n_bits": 3},
        )
    )

    # %% The predictor: fetches model.tar.gz once, checks versions and fingerprint.
    model = cleanup.enter_context(
        EncryptedPredictor(
            stack.endpoint_name,
            stack.model_data,
            stack.s3_prefix,
            session=stack.session(),
            s3_endpoint_url=stack.s3_endpoint_url,
            runtime_endpoint_url=stack.runtime_url,
            key_dir=stack.work_dir / "keys",
            batch_size=5,
        )
    )
    print(model)

    # %% Keys: generated once per model, kept in the key directory (secret key stays here).
    keys = model.ensure_keys()
    print(
        f"keys in {keys.directory}: evaluation keys {keys.evaluation_keys_bytes / 1e6:.1f} MB,"
        f" generated now: {keys.generated}"
    )

    # %% Predict encrypted: scikit-learn shaped, numpy in and out.
    proba = model.predict_proba(patients)
    labels = model.predict(patients)
    print("labels      ", labels)
    print("true labels ", y_patients[:10])
    print("accuracy    ", float(np.mean(labels == y_patients[:10])))
    print("timings     ", model.last_timings)

    # %% Bad input is refused before anything is uploaded, with the reason.
    try:
        model.predict(patients[:, :5])
    except InvalidInputError as exc:
        print("refused:", exc)

    # %% A second predictor on the same key directory reuses the keys: no keygen, no upload.
    # (stack.predictor() builds the same EncryptedPredictor as above, keys in work_dir/keys.)
    with stack.predictor(progress=False) as again:
        assert (again.predict(patients) == labels).all()
        print(
            "second predictor: keygens",
            again.timings.keygens,
            "evaluation-key uploads",
            again.timings.evaluation_key_uploads,
        )
