"""The gRPC edge: servicers, worker sessions, pb2 conversion, validation and status mapping."""
