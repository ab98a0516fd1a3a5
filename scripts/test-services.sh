#!/usr/bin/env bash
# Installs and starts what the labeling app's tests need; writes .test-services.env.
# (Filled in by the labeling-app work: PostgreSQL + Chromium.)
: > .test-services.env
