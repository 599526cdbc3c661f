"""Recipe section schemas, one module per stage plus the shared sections."""
