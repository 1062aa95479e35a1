"""Deploying networks: prediction, export (ONNX / TorchScript / ExportedProgram), optimize_for_inference."""
