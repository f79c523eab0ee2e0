"""The model core both paths share: the artifact, its scoring contract, feature encoding."""
