"""Generated protobuf and gRPC code for the medledger API (protos/).

Do not edit: regenerate with `.venv/bin/python infra/genprotos.py`. The tree is committed and
tests/unit/test_generated_code.py fails when it drifts from protos/.
"""
