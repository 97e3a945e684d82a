"""The operator layer: loading the compiled library (library), the one attribute validator
(validation), the NDArray/Symbol front (front), the three backends (native, custom_op,
stock_ops), the Gluon layers (gluon), the Symbol API (symbol), Weight Standardization
(weight_standardization: its function, two backends and the conv fronts' helpers) and the
compile commands of operators/ (build)."""
