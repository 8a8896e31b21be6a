from gentron.pipelines.pipeline_gentron import GenTronPipeline, GenTronPipelineOutput, make_grid

__all__ = ["GenTronPipeline", "GenTronPipelineOutput", "make_grid"]
