"""After training: conversion to a standard HF model, held-out evaluation, lm-eval benchmarks."""
