"""The foundation every layer stands on: what a sentence-embedding model is and how its artifacts are described.

model_source (resolve and load a model), graph (the one embedding graph), pca (the folded projection),
reference (fp32 embeddings to compare against), data (STS-B and corpora), manifest (the artifact contract),
metrics (cosines, Spearman), cpu (instruction sets), config (the build configuration) and errors.

Nothing here imports converters, targets or pipelines. Modules that need torch (graph, pca, model_source,
reference) are not imported by the ones an app needs to run an artifact (manifest, metrics, cpu, errors).
"""
