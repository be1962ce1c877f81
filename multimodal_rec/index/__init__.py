"""FAISS: index choice by catalog size, build, search (masked / filtered), shards."""
