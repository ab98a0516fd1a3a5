"""Evaluation (paper section 4): win rates against the SFT baseline by held-out labelers on
held-out users' prompts, Likert scores and metadata flags, program checks (truthfulness,
harmlessness, instruction following) and the alignment tax; an HTML report."""
