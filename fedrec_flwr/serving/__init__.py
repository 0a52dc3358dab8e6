"""Serving: the node store, checkpoints and resume, delivery, scoring, recommendations.

Nothing is imported here at package import (the ClientApp imports the modules
it needs); the public names live in their modules: :mod:`.store`
(:class:`~.store.NodeStore`), :mod:`.checkpoint`, :mod:`.session`
(:class:`~.session.ServerSession`), :mod:`.recommender`
(:class:`~.recommender.NodeRecommender`), :mod:`.scoring`
(:func:`~.scoring.top_k`, :func:`~.scoring.full_ranking_sums`).
"""

__all__: list[str] = []
