# Convenience wrappers; the README's two commands work without make.
.PHONY: up test check protos
up:
	python3 infra/dev.py up
test:
	python3 infra/dev.py test
check:
	python3 infra/dev.py check
protos:
	.venv/bin/python infra/genprotos.py
