"""FAISS: ``build`` (index choice by catalog size, build, search params, describe, read), ``search`` (top-k, exact
reference, masked / filtered search), ``shards`` (one index per video-id hash shard, merged at search time)."""
