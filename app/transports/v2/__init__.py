"""The Open Inference Protocol (KServe v2 REST, with Triton's binary tensor data extension): its wire
format (:mod:`.codec`), what Glimpse's model looks like through it (:mod:`.protocol`)."""
