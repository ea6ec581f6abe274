"""The fingerprint registry: YAML files of protocols and enrolled curves, validated, written atomically."""
