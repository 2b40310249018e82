"""Reading features off text: annotation, ranking, labels in words, self-explanation, feature statistics and the feature map."""
